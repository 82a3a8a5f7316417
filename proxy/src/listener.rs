//! Accept loops and per-connection handling: original destination, protocol detection, then
//! HTTP serving or an opaque TCP relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use halyard_certs::tls::{ALPN_H2, ALPN_HTTP11};
use halyard_xds::{MtlsMode, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{detect, Detected};
use crate::http::proxy::ConnInfo;
use crate::io::{DownstreamIo, PrefixedIo};
use crate::mtls::{port_from_server_name, read_client_hello, Alpn, PeerCert, HANDSHAKE_TIMEOUT};
use crate::plan;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::TcpRecord;
use crate::telemetry::flags::Flags;
use crate::telemetry::ListenerKind;
use crate::upstream::ConnectError;
use crate::upstream::{pick, Upstream};

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

/// Detects the protocol as a port's declaration allows: declared TCP is not peeked at
/// (unless mesh TLS may arrive there), declared HTTP waits longer for the client to speak.
async fn detect_for<I: AsyncRead + Unpin>(
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
    let max_headers = snap.settings.max_request_headers;
    let idle_timeout = snap.settings.downstream_idle_timeout;
    let mut info = ConnInfo::new(kind, peer, orig_dst);
    info.local = Some(local);
    let orig_port = orig_dst.map(|d| d.port());
    let mode = snap.inbound_mtls(orig_port);
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
    let (proto, io) = match kind {
        // TLS from the app is not terminated: its server name routes it (TLS routes, or the
        // service of that host when the connection was not redirected).
        ListenerKind::Outbound if proto == Detected::Tls => {
            match read_client_hello(stream, prefix, HANDSHAKE_TIMEOUT).await {
                Ok(hello) => {
                    info.sni = hello.server_name().map(Into::into);
                    (proto, DownstreamIo::Plain(hello.into_passthrough()))
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "outbound TLS without a readable ClientHello");
                    return;
                }
            }
        }
        ListenerKind::Outbound => (proto, DownstreamIo::Plain(PrefixedIo::new(prefix, stream))),
        ListenerKind::Inbound => {
            info.dst_port = orig_port;
            match inbound_security(shared, &snap, &mut info, stream, proto, prefix).await {
                Some(x) => x,
                None => return,
            }
        }
    };
    let info = Arc::new(info);
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

/// Applies the inbound port's mutual TLS mode: terminates mesh TLS (recording the verified
/// peer), passes other TLS or plaintext through as the mode allows, and refuses the rest.
/// Returns the inner protocol and stream, or `None` when the connection was refused.
async fn inbound_security(
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
        if snap.inbound_mtls(info.dst_port) == MtlsMode::Strict {
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
    let mode = snap.inbound_mtls(info.dst_port);
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
    let inner = match alpn.as_deref() {
        Some(ALPN_H2) => (Detected::Http2, Bytes::new()),
        Some(ALPN_HTTP11) => (Detected::Http1, Bytes::new()),
        _ => {
            let hint = snap
                .inbound_target(info.dst_port)
                .map_or(Protocol::Auto, |t| t.protocol);
            match detect_for(&mut stream, hint, false, snap.settings.detection_timeout).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "read failed after TLS handshake");
                    return None;
                }
            }
        }
    };
    let (proto, prefix) = inner;
    // Mesh TLS carries no TLS inside as far as we are concerned: relay it as bytes.
    let proto = if proto == Detected::Tls {
        Detected::Tcp
    } else {
        proto
    };
    Some((
        proto,
        DownstreamIo::Tls(Box::new(PrefixedIo::new(prefix, stream))),
    ))
}

/// Relays an opaque TCP connection to its destination.
async fn forward_tcp<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    info: &ConnInfo,
    mut io: I,
) {
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let target = match plan::tcp(snap, info, fastrand::u64(..)) {
        Ok(t) => t,
        Err(local) => {
            return log_tcp(
                shared,
                snap,
                info,
                start_wall,
                start,
                None,
                None,
                Default::default(),
                local.flags,
            )
        }
    };
    if info.listener == ListenerKind::Inbound
        && !tcp_allowed(
            shared,
            snap,
            info,
            info.dst_port.or(target.service_port).unwrap_or(0),
        )
    {
        // Dropping the stream closes the connection before a byte reaches the app.
        return log_tcp(
            shared,
            snap,
            info,
            start_wall,
            start,
            None,
            None,
            Default::default(),
            Flags::RBAC,
        );
    }
    // The circuit-breaker slot, held for the life of the connection.
    let mut _admitted = None;
    if let Some(c) = target.cluster {
        // maxConnections applies to TCP as a hard cap: no queueing.
        match c.breaker.admit(c.limits.max_connections, 0).await {
            Ok(slot) => _admitted = Some(slot),
            Err(_) => {
                shared
                    .metrics
                    .traffic
                    .overflow
                    .with_label_values(&[&c.name])
                    .inc();
                return log_tcp(
                    shared,
                    snap,
                    info,
                    start_wall,
                    start,
                    None,
                    Some(&c.name),
                    Default::default(),
                    Flags::UO,
                );
            }
        }
    }
    let cluster: Option<Arc<str>> = match target.cluster {
        Some(c) => Some(c.name.clone()),
        None if target.is_passthrough() => Some("PassthroughCluster".into()),
        None => None,
    };
    let (endpoints, lb, idle) = (target.endpoints.as_slice(), target.lb, target.idle);
    let rr = target.rr.unwrap_or(&shared.inbound_rr);
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut flags = Flags::default();
    for attempt in 1..=3 {
        let avoid = crate::upstream::Avoid {
            tried: &tried,
            now: std::time::Instant::now(),
        };
        let Some(up) = pick(endpoints, lb, rr, None, avoid) else {
            flags.set(Flags::UH);
            break;
        };
        let _in_flight = up.begin();
        match up.connect(shared.mtls.as_deref(), Alpn::Opaque).await {
            Ok(server) => {
                let conn = snap.settings.istio_metrics.then(|| {
                    crate::telemetry::report::tcp_conn(shared, snap, info, up, cluster.as_deref())
                });
                let mut server = crate::io::Counted::new(server, conn);
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
                count_connect_failure(shared, &e);
                tracing::debug!(upstream = %up.authority, error = %e, attempt, "TCP upstream connect failed");
                flags.set(Flags::UF);
                if attempt > 1 {
                    flags.set(Flags::URX);
                }
                tried.push(up.clone());
            }
        }
    }
    let upstream = tried.last().map(|u| u.authority.clone());
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

/// Authorizes an inbound TCP connection with the rules that need only L4 attributes.
fn tcp_allowed(shared: &Shared, snap: &Snapshot, info: &ConnInfo, port: u16) -> bool {
    if snap.rbac.is_empty() {
        return true;
    }
    let decision = snap
        .rbac
        .evaluate_tcp(&crate::http::policy::connection(info, port));
    crate::http::policy::record(&shared.metrics, &decision);
    if !decision.allowed() {
        tracing::debug!(
            peer = %info.peer,
            policy = decision.policy_label(),
            reason = decision.reason().as_str(),
            "connection denied by authorization policy"
        );
    }
    decision.allowed()
}

/// Counts a failed upstream connect, and a TLS failure by reason when that is what it was.
pub fn count_connect_failure(shared: &Shared, e: &ConnectError) {
    shared.metrics.connect_failures.inc();
    if let ConnectError::Tls(t) = e {
        shared
            .metrics
            .tls_failure(ListenerKind::Outbound, t.reason());
    }
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
    let Some(fields) = &snap.settings.access_log else {
        return;
    };
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
        log.write(rec.line(fields));
    }
}
