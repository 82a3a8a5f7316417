//! Carrying out a TCP plan: the circuit-breaker slot held for the connection's life, the
//! connect attempts, the relay, and the connection's access-log line.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::{self, Connected};
use super::relay::{self, RelayError, Side, Transferred};
use crate::ctx::{ConnInfo, Flags};
use crate::io::abort::Abort;
use crate::io::Counted;
use crate::plan::Target;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::TcpRecord;
use crate::watched::Registration;

/// Connects to a TCP target, tried up to this many times (Istio's default: 2 retries).
const TCP_ATTEMPTS: u32 = 3;

/// What a TCP connection's access-log line says; written when the connection ends.
#[derive(Debug)]
pub struct TcpLog {
    start_wall: SystemTime,
    start: Instant,
    upstream: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    moved: Transferred,
    flags: Flags,
}

impl TcpLog {
    /// Starts timing a connection.
    pub fn begin() -> Self {
        Self {
            start_wall: SystemTime::now(),
            start: Instant::now(),
            upstream: None,
            cluster: None,
            moved: Transferred::default(),
            flags: Flags::default(),
        }
    }

    /// Ends a connection refused before any upstream was tried.
    pub fn refused(mut self, shared: &Shared, snap: &Snapshot, info: &ConnInfo, flags: Flags) {
        self.flags.set(flags);
        self.write(shared, snap, info);
    }

    fn write(&self, shared: &Shared, snap: &Snapshot, info: &ConnInfo) {
        let (Some(fields), Some(log)) = (&snap.settings.access_log, &shared.access_log) else {
            return;
        };
        let rec = TcpRecord {
            listener: info.listener,
            start_wall: self.start_wall,
            duration: self.start.elapsed(),
            peer: info.peer,
            upstream: self.upstream.as_deref(),
            cluster: self.cluster.as_deref(),
            received: self.moved.client_to_server,
            sent: self.moved.server_to_client,
            flags: self.flags,
        };
        log.write(rec.line(fields));
    }
}

/// Relays `io` to an endpoint of `target` (until `watch` says the connection must close)
/// and logs the connection when it ends.
pub async fn carry<I: AsyncRead + AsyncWrite + Unpin + Abort>(
    shared: &Shared,
    snap: &Snapshot,
    info: &ConnInfo,
    target: Target<'_>,
    mut io: I,
    mut log: TcpLog,
    watch: Option<&Registration>,
) {
    log.cluster = match target.cluster {
        Some(c) => Some(c.name.clone()),
        None if target.is_passthrough() => Some("PassthroughCluster".into()),
        None => None,
    };
    // The circuit-breaker slot, held for the life of the connection.
    let _admitted = match target.cluster {
        // maxConnections applies to TCP as a hard cap: no queueing.
        Some(c) => match c.breaker.admit(c.limits.max_connections, 0).await {
            Ok(slot) => Some(slot),
            Err(_) => {
                shared
                    .metrics
                    .traffic
                    .overflow
                    .with_label_values(&[&c.name])
                    .inc();
                return log.refused(shared, snap, info, Flags::UO);
            }
        },
        None => None,
    };
    let Connected {
        up,
        io: server,
        in_flight: _in_flight,
    } = match connect::open(shared, &target, TCP_ATTEMPTS, |_| {}).await {
        Ok(c) => c,
        Err(failed) => {
            if failed.failures > 0 {
                log.flags.set(Flags::UF);
            }
            if failed.failures > 1 {
                log.flags.set(Flags::URX);
            }
            if failed.no_healthy {
                log.flags.set(Flags::UH);
            }
            log.upstream = failed.last.map(|u| u.authority.clone());
            return log.write(shared, snap, info);
        }
    };
    let conn = snap
        .settings
        .istio_metrics
        .then(|| crate::request::report::tcp_conn(shared, snap, info, &up, log.cluster.as_deref()));
    let mut server = Counted::new(server, conn);
    log.upstream = Some(up.authority.clone());
    let stop = watch.map(|w| w.watched().closed());
    let ended = relay::relay(&mut io, &mut server, target.idle, stop).await;
    let (reset_client, reset_server) = match &ended {
        Ok(_) => (false, false),
        Err(RelayError::Idle(_)) => {
            log.flags.set(Flags::IDLE);
            (false, false)
        }
        Err(RelayError::Stopped(_)) => {
            if let Some(why) = watch.and_then(|w| w.watched().why()) {
                log.flags.set(why.flag());
            }
            // Revoked: both ends learn the connection was cut, not finished.
            (true, true)
        }
        Err(e) => {
            tracing::debug!(error = %e, "TCP relay ended with error");
            // A reset on one end is passed on to the other, as the kernel would between peers.
            let side = e.reset_side();
            (side == Some(Side::Server), side == Some(Side::Client))
        }
    };
    log.moved = match ended {
        Ok(m) => m,
        Err(e) => e.moved(),
    };
    if reset_client {
        io.abort();
    }
    if reset_server {
        server.abort();
    }
    log.write(shared, snap, info);
}
